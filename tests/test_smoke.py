from tests.fake_upstream import content_of


async def test_sdk_chat_non_stream_and_stream(sdk, fake):
    r = await sdk.chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert r.choices[0].message.content.startswith("answer from")
    stream = await sdk.chat.completions.create(
        model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = ""
    async for ev in stream:
        if ev.choices:
            text += ev.choices[0].delta.content or ""
    assert text == content_of(3)
    models = await sdk.models.list()
    assert [m.id for m in models.data][0] == "openai/gpt-4o"
