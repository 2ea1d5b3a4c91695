"""Streams through `baton serve` with the official openai SDK (a client we did not write).

Usage: openai_sdk.py BASE_URL MODEL... ; prints one JSON line per model:
{"model": ..., "stream": <streamed text>, "whole": <non-streamed text>, "error": null | str}
"""
import json
import sys

from openai import OpenAI


def conversation(model, mode):
    return [
        {"role": "system", "content": "You are an SDK test."},
        {"role": "user", "content": f"sdk {model} {mode}"},
    ]


def main():
    base_url, models = sys.argv[1], sys.argv[2:]
    client = OpenAI(base_url=base_url, api_key="sk-unused", max_retries=0, timeout=60)
    for model in models:
        result = {"model": model, "stream": None, "whole": None, "error": None}
        try:
            parts = []
            stream = client.chat.completions.create(
                model=model,
                messages=conversation(model, "stream"),
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
            result["stream"] = "".join(parts)
            whole = client.chat.completions.create(model=model, messages=conversation(model, "whole"))
            result["whole"] = whole.choices[0].message.content
        except Exception as e:  # reported to the Rust side, which fails the test
            result["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
