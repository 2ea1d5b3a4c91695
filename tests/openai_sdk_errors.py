"""Asks `baton serve` once with the official openai SDK and its default retries.

Usage: openai_sdk_errors.py BASE_URL ; prints one JSON line:
{"error": <the SDK's exception class or null>, "status": <HTTP status or null>, "code": <error code or null>}
The Rust side counts the requests the upstreams received.
"""
import json
import sys

from openai import APIStatusError, OpenAI


def main():
    # The SDK's own retry policy (max_retries=2 by default) is what is under test.
    client = OpenAI(base_url=sys.argv[1], api_key="sk-unused", timeout=60)
    result = {"error": None, "status": None, "code": None}
    try:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello"}])
    except APIStatusError as e:
        result["error"] = type(e).__name__
        result["status"] = e.status_code
        result["code"] = getattr(e, "code", None)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
