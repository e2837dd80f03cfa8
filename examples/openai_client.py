"""Any OpenAI client, pointed at this home's node: the local HTTP API with the home's key.

The API asks every request for the key in the home's ``api.key`` (``syncq api-key`` prints it;
``syncq.api_key()`` reads it), so a program of this machine's user gets in and a web page or
another user of the machine does not. This one asks one question and streams the answer, from
whichever node of the mesh runs it:

    syncq node &                                   # serves the API on 127.0.0.1:7331
    python examples/openai_client.py --model smollm2-135m "Why is the sky blue?"

Options: --home (default: $SYNCQ_HOME or the user data dir), --url (default
http://127.0.0.1:7331), --model. Programs that cannot import syncq take the key from the
environment instead: ``OPENAI_API_KEY=$(syncq api-key) OPENAI_BASE_URL=http://127.0.0.1:7331/v1``.
"""

from __future__ import annotations

import argparse
import sys

from openai import OpenAI

import syncq


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--model", required=True)
    parser.add_argument("--home")
    parser.add_argument("--url", default="http://127.0.0.1:7331")
    args = parser.parse_args()
    try:
        key = syncq.api_key(args.home)
    except syncq.SyncqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    client = OpenAI(base_url=f"{args.url}/v1", api_key=key, max_retries=0)
    stream = client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": args.question}], stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
