"""The README's SDK example: run it against a gateway on the embedded default (`gateway serve`)."""

import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080/v1"), api_key="unused")

reply = client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}]
)
print(reply.choices[0].message.content, reply.usage)

for chunk in client.chat.completions.create(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream, please"}], stream=True
):
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()

emb = client.embeddings.create(model="mock-embed-1", input=["a", "b"])
print(len(emb.data), len(emb.data[0].embedding))
