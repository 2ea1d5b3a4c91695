"""Streams through `baton serve`'s Messages door with the official anthropic SDK (a client we did not write).

Usage: anthropic_sdk.py BASE_URL MODEL... ; prints one JSON line per model:
{"model": ..., "raw": <text of text_delta events of create(stream=True)>, "raw_last": <last event type>,
 "text_stream": <messages.stream's text_stream joined>, "final": <get_final_message's text>,
 "final_stop": <its stop_reason>, "final_blocks": [<block types>], "thinking": <its thinking text>,
 "tools": [[id, name, input]...], "whole": <messages.create text>, "whole_stop": <stop_reason>,
 "error": null | {"class", "status", "type", "stage", "message"}, "partial": <raw text before an error>}
The mode is part of each request's text (`sdk MODEL MODE`), so the oracle answers each differently.
"""
import json
import sys

import anthropic

SYSTEM = "You are an SDK test."
TOOLS = [
    {"name": "weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"place": {"type": "string"}}}},
    {"name": "time", "input_schema": {"type": "object"}},
]


def ask(model, mode):
    return dict(model=model, max_tokens=1024, system=SYSTEM, tools=TOOLS,
                messages=[{"role": "user", "content": f"sdk {model} {mode}"}])


def text_of(message):
    return "".join(b.text for b in message.content if b.type == "text")


def main():
    base_url, models = sys.argv[1], sys.argv[2:]
    client = anthropic.Anthropic(base_url=base_url, api_key="sk-unused", max_retries=0, timeout=60)
    for model in models:
        result = {"model": model, "error": None}
        stage = "raw"
        parts, last = [], None
        try:
            for event in client.messages.create(stream=True, **ask(model, "raw")):
                last = event.type
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    parts.append(event.delta.text)
            result["raw"], result["raw_last"] = "".join(parts), last
            stage = "stream"
            with client.messages.stream(**ask(model, "stream")) as stream:
                result["text_stream"] = "".join(stream.text_stream)
                final = stream.get_final_message()
            result["final"] = text_of(final)
            result["final_stop"] = final.stop_reason
            result["final_blocks"] = [b.type for b in final.content]
            result["thinking"] = "".join(b.thinking for b in final.content if b.type == "thinking")
            result["tools"] = [[b.id, b.name, b.input] for b in final.content if b.type == "tool_use"]
            result["usage"] = [final.usage.input_tokens, final.usage.output_tokens]
            stage = "whole"
            whole = client.messages.create(**ask(model, "whole"))
            result["whole"] = text_of(whole)
            result["whole_stop"] = whole.stop_reason
            result["whole_tools"] = [[b.id, b.name, b.input] for b in whole.content if b.type == "tool_use"]
        except Exception as e:  # reported to the Rust side, which judges it
            body = getattr(e, "body", None)
            error = body.get("error") if isinstance(body, dict) else None
            result["error"] = {
                "class": type(e).__name__,
                "status": getattr(e, "status_code", None),
                "type": error.get("type") if isinstance(error, dict) else None,
                "stage": stage,
                "message": str(e),
            }
            result.setdefault("text_stream", None)
            result["partial"] = "".join(parts)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
