"""Chat templates: built-ins give each family's published format; templates are sandboxed."""

from __future__ import annotations

import pytest

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
