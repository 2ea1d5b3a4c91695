"""Streams through `baton serve`'s Responses door with the official openai SDK (a client we did not write).

Usage: responses_sdk.py BASE_URL MODEL... ; prints one JSON line per model:
{"model": ..., "create_stream": <text of response.output_text.delta events>,
 "create_stream_last": <last event type>, "helper": <stream helper's final output_text>,
 "whole": <non-streamed output_text>, "error": null | {"class", "status", "code", "stage"}}
"""
import json
import sys

from openai import OpenAI

INSTRUCTIONS = "You are an SDK test."


def main():
    base_url, models = sys.argv[1], sys.argv[2:]
    client = OpenAI(base_url=base_url, api_key="sk-unused", max_retries=0, timeout=60)
    for model in models:
        result = {"model": model, "create_stream": None, "create_stream_last": None,
                  "helper": None, "whole": None, "error": None}
        stage = "create_stream"
        try:
            parts = []
            last = None
            for event in client.responses.create(
                model=model, instructions=INSTRUCTIONS, input=f"sdk {model} create_stream", stream=True
            ):
                last = event.type
                if event.type == "response.output_text.delta":
                    parts.append(event.delta)
            result["create_stream"] = "".join(parts)
            result["create_stream_last"] = last
            stage = "helper"
            with client.responses.stream(
                model=model, instructions=INSTRUCTIONS, input=f"sdk {model} helper"
            ) as stream:
                for _ in stream:
                    pass
                result["helper"] = stream.get_final_response().output_text
            stage = "whole"
            whole = client.responses.create(model=model, instructions=INSTRUCTIONS, input=f"sdk {model} whole")
            result["whole"] = whole.output_text
        except Exception as e:  # reported to the Rust side, which judges it
            body = getattr(e, "body", None)
            code = body.get("code") if isinstance(body, dict) else None
            result["error"] = {
                "class": type(e).__name__,
                "status": getattr(e, "status_code", None),
                "code": code,
                "stage": stage,
                "message": str(e),
            }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
