"""Chat templates: built-ins give each family's published format; templates are sandboxed."""

from __future__ import annotations

import pytest
from bundled_corpus import CAPITALS, answer

from realm_web.chat import BUILTIN_TEMPLATES, ChatTemplate, ChatTemplateError

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Capital of France?"},
]


def test_chatml():
    got = ChatTemplate.builtin("chatml").render(CONV)
    assert got == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_llama2():
    got = ChatTemplate.builtin("llama2", bos_token="<s>", eos_token="</s>").render(CONV)
    assert got == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Capital of France? [/INST]"
    )


def test_llama3():
    got = ChatTemplate.builtin("llama3", bos_token="<|begin_of_text|>").render(CONV[1:2])
    assert got == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_alpaca():
    got = ChatTemplate.builtin("alpaca", eos_token="</s>").render(CONV[:3], add_generation_prompt=False)
    assert got == "Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello!</s>\n\n"


def test_generation_prompt_flag():
    t = ChatTemplate.builtin("chatml")
    assert not t.render(CONV[1:2], add_generation_prompt=False).endswith("assistant\n")


def test_raise_exception_is_a_clear_error():
    with pytest.raises(ChatTemplateError, match="alternate"):
        ChatTemplate.builtin("llama2").render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{% set x = messages.append({'role': 'x'}) %}",
        "{{ raise_exception.__globals__ }}",
    ],
)
def test_sandbox_refuses_escapes(source):
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source).render(CONV)


def test_syntax_error_is_clear():
    with pytest.raises(ChatTemplateError, match="does not parse"):
        ChatTemplate("{% for m in messages %}")


def test_bad_messages():
    with pytest.raises(ChatTemplateError, match="message 0"):
        ChatTemplate.builtin("chatml").render([{"content": "no role"}])


def test_hub_style_helpers():
    src = (
        "{{ messages | tojson }}"
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}"
    )
    got = ChatTemplate(src).render([{"role": "user", "content": "é"}, {"role": "x", "content": ""}])
    assert got == '[{"role": "user", "content": "é"}, {"role": "x", "content": ""}]user'


def test_builtins_listed():
    assert set(BUILTIN_TEMPLATES) == {"chatml", "llama2", "llama3", "alpaca"}


# ---- the bundled model in Chat mode: it answers, through its own template, what it completes in plain text ----


@pytest.fixture(scope="module")
def bundled(dev):
    import realm_web
    from realm_web.cli import bundled_model

    return realm_web.load(bundled_model(), device=dev)


def test_bundled_model_answers_every_capital_of_its_corpus(bundled):
    wrong = {}
    for country in CAPITALS:
        messages = [{"role": "user", "content": f"What is the capital of {country}?"}]
        reply = bundled.chat(messages, stream=False, temperature=0, max_tokens=32)
        if reply != answer(country) or bundled.last_usage["finish_reason"] != "stop":
            wrong[country] = (reply, bundled.last_usage["finish_reason"])
    assert not wrong, f"{len(wrong)} of {len(CAPITALS)} wrong: {wrong}"


def test_bundled_model_answers_the_last_question_of_a_conversation(bundled):
    """As the demo page and `realm-web run --chat` send it: the whole history, maybe a system message."""
    countries = list(CAPITALS)
    wrong = {}
    for i, country in enumerate(countries[::3]):
        before = countries[(i * 5 + 1) % len(countries)]
        messages = [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"What is the capital of {before}?"},
            {"role": "assistant", "content": answer(before)},
            {"role": "user", "content": f"Which city is the capital of {country}?"},
        ]
        reply = bundled.chat(messages, stream=False, temperature=0, max_tokens=32)
        if reply != answer(country):
            wrong[country] = reply
    assert not wrong, wrong


def test_bundled_model_still_completes_plain_text(bundled):
    assert next(bundled.generate("The capital of France is", max_tokens=4, temperature=0)) == " Paris"
