"""Tool calls through `baton serve`, assembled by clients we did not write:
the official openai SDK (its stream helper accumulates deltas) and LangChain's
ChatOpenAI (AIMessageChunk addition merges tool-call chunks by index).

Usage: client_tools.py BASE_URL MODEL... ; prints one JSON line per model:
{"model": ..., "<client>": {"calls": [{"id", "name", "args"}], "invalid": n} | {"error": str}, ...}
for the clients sdk_stream, sdk_whole, langchain_stream and langchain_whole.
"""
import json
import sys

from langchain_openai import ChatOpenAI
from openai import OpenAI

MESSAGES = [{"role": "user", "content": "What is the weather in Paris and the time in Tokyo?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} somewhere",
            "parameters": {"type": "object", "properties": {"place": {"type": "string"}}},
        },
    }
    for name in ("weather", "time")
]


def sdk_calls(tool_calls):
    return [
        {"id": c.id, "name": c.function.name, "args": json.loads(c.function.arguments)}
        for c in tool_calls or []
    ]


def langchain_calls(message):
    calls = [{"id": c["id"], "name": c["name"], "args": c["args"]} for c in message.tool_calls]
    return {"calls": calls, "invalid": len(message.invalid_tool_calls)}


def run(name, f):
    try:
        return f()
    except Exception as e:  # reported to the Rust side, which fails the test
        return {"error": f"{name}: {type(e).__name__}: {e}"}


def main():
    base_url, models = sys.argv[1], sys.argv[2:]
    client = OpenAI(base_url=base_url, api_key="sk-unused", max_retries=0, timeout=60)
    for model in models:
        llm = ChatOpenAI(model=model, base_url=base_url, api_key="sk-unused", max_retries=0, timeout=60)
        llm = llm.bind_tools(TOOLS)

        def sdk_stream():
            with client.chat.completions.stream(model=model, messages=MESSAGES, tools=TOOLS) as stream:
                for _ in stream:
                    pass
                final = stream.get_final_completion()
            return {"calls": sdk_calls(final.choices[0].message.tool_calls), "invalid": 0}

        def sdk_whole():
            whole = client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS)
            return {"calls": sdk_calls(whole.choices[0].message.tool_calls), "invalid": 0}

        def langchain_stream():
            total = None
            for chunk in llm.stream(MESSAGES):
                total = chunk if total is None else total + chunk
            return langchain_calls(total)

        result = {
            "model": model,
            "sdk_stream": run("sdk_stream", sdk_stream),
            "sdk_whole": run("sdk_whole", sdk_whole),
            "langchain_stream": run("langchain_stream", langchain_stream),
            "langchain_whole": run("langchain_whole", lambda: langchain_calls(llm.invoke(MESSAGES))),
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
