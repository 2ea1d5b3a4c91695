"""Reads every output item through `baton serve`'s Responses door with the official openai SDK.

Usage: responses_sdk_items.py BASE_URL MODEL... ; prints one JSON line per model:
{"model": ..., "stream": [item...], "whole": [item...], "stream_text": str, "whole_text": str, "error": null | str}
where an item is {"type", "text"} (message, reasoning) or {"type", "call_id", "name", "arguments"}.
"""
import json
import sys

from openai import OpenAI

INSTRUCTIONS = "You are an SDK test."
TOOLS = [
    {"type": "function", "name": "weather", "parameters": {"type": "object", "properties": {"place": {"type": "string"}}}},
    {"type": "function", "name": "time", "parameters": {"type": "object", "properties": {"place": {"type": "string"}}}},
]


def items(response):
    out = []
    for item in response.output:
        if item.type == "message":
            out.append({"type": "message", "text": "".join(c.text for c in item.content if c.type == "output_text")})
        elif item.type == "reasoning":
            out.append({"type": "reasoning", "text": "".join(c.text for c in (item.content or []))})
        elif item.type == "function_call":
            out.append({"type": "function_call", "call_id": item.call_id, "name": item.name, "arguments": item.arguments})
        else:
            out.append({"type": item.type})
    return out


def main():
    base_url, models = sys.argv[1], sys.argv[2:]
    client = OpenAI(base_url=base_url, api_key="sk-unused", max_retries=0, timeout=60)
    for model in models:
        result = {"model": model, "stream": None, "whole": None, "stream_text": None, "whole_text": None, "error": None}
        try:
            with client.responses.stream(
                model=model, instructions=INSTRUCTIONS, input=f"sdk {model} stream", tools=TOOLS
            ) as stream:
                for _ in stream:
                    pass
                final = stream.get_final_response()
            result["stream"] = items(final)
            result["stream_text"] = final.output_text
            whole = client.responses.create(model=model, instructions=INSTRUCTIONS, input=f"sdk {model} whole", tools=TOOLS)
            result["whole"] = items(whole)
            result["whole_text"] = whole.output_text
        except Exception as e:  # reported to the Rust side, which fails the test
            result["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
