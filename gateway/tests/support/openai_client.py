"""The official `openai` Python package against cloister's gateway (issue 14's CI check).

Usage: openai_client.py BASE_URL PROMPT MAX_TOKENS
Prints one JSON object: the model list, a streamed and a non-streamed chat completion of PROMPT (greedy), and
what a request with a wrong type gives.
"""

import json
import sys

import openai

base_url, prompt, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0)
model = client.models.list().data[0].id
messages = [{"role": "user", "content": prompt}]

streamed, stream_finish, chunk_objects = [], None, set()
for chunk in client.chat.completions.create(
    model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
    stream_options={"include_usage": True},
):
    chunk_objects.add(chunk.object)
    if chunk.choices:
        if chunk.choices[0].delta.content:
            streamed.append(chunk.choices[0].delta.content)
        if chunk.choices[0].finish_reason:
            stream_finish = chunk.choices[0].finish_reason
    if chunk.usage:
        stream_usage = [chunk.usage.prompt_tokens, chunk.usage.completion_tokens]

whole = client.chat.completions.with_raw_response.create(
    model=model, messages=messages, max_completion_tokens=max_tokens, temperature=0,
)
attestation = whole.headers.get("cloister-attestation")
whole = whole.parse()

try:
    client.chat.completions.create(model=model, messages=messages, temperature="hot")
    bad_request = None
except openai.BadRequestError as error:
    bad_request = [error.status_code, error.body.get("type") if isinstance(error.body, dict) else None]

print(json.dumps({
    "model": model,
    "streamed": "".join(streamed),
    "stream_finish": stream_finish,
    "stream_usage": stream_usage,
    "chunk_objects": sorted(chunk_objects),
    "whole": whole.choices[0].message.content,
    "whole_object": whole.object,
    "whole_finish": whole.choices[0].finish_reason,
    "whole_usage": [whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens],
    "attestation": attestation,
    "bad_request": bad_request,
}))
