"""Chat templates: rendered as transformers renders them, and hostile templates refused.

The templates are written here in the shape their model families ship them (ChatML/Qwen2.5,
Llama 3.x, Gemma, SmolLM2), so no download is needed.
"""
import json
import sys

import pytest

from tinygrad_llm.tokenizer import TokenizerError, from_pretrained
from tinygrad_llm.tokenizer.chat import ChatTemplateError, render_chat_template

pytest.importorskip("jinja2")

QWEN = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
         "{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = \"\" %}{% set loop_messages = messages %}"
         "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = \"model\" %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}"
         "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# namespace, loop controls, {% generation %}, dict(), tojson options, reasoning fields
FEATURES = """{%- set ns = namespace(count=0) %}
{%- for m in messages %}
    {%- if m.role == 'stop' %}{% break %}{% endif %}
    {%- set ns.count = ns.count + 1 %}
    {%- if m.role == 'assistant' %}
        {%- generation %}[{{ m.content }}]{% endgeneration %}
        {%- if m.reasoning_content is defined %}<think>{{ m.reasoning_content }}</think>{% endif %}
    {%- else %}
        {{- m.role }}: {{ m.content }} {{ dict(a=1, b=[2, "é"]) | tojson(indent=1, sort_keys=True) }}
    {%- endif %}
{%- endfor %}
{{- ' n=' ~ ns.count ~ (' go' if add_generation_prompt else '') }}"""

TEMPLATES = {"qwen": QWEN, "llama3": LLAMA3, "gemma": GEMMA, "smollm2": SMOLLM2, "features": FEATURES}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "  You are terse.  "}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3? ünïcödé 日本 👍"}],
    [{"role": "user", "content": "a\nb"}, {"role": "assistant", "content": " spaced ", "tool_calls": None},
     {"role": "user", "content": "<|im_end|> inside"}],
]


@pytest.fixture(scope="module")
def folder_for(tmp_path_factory):
    """template name -> a folder with a small byte-level tokenizer.json and that chat template."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
                "<|start_header_id|>", "<|end_header_id|>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
    text = "Hello there, what is two plus two? The assistant says four.\n" * 30
    tk.train_from_iterator([text], trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = {"qwen": None, "llama3": "<|begin_of_text|>", "gemma": "<bos>", "smollm2": "<|im_start|>",
           "features": "<|endoftext|>"}
    folders = {}
    for name, template in TEMPLATES.items():
        folder = tmp_path_factory.mktemp(name)
        tk.save(str(folder / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "chat_template": template}
        if bos[name]:
            config["bos_token"] = bos[name]
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        folders[name] = folder
    return folders


@pytest.mark.reference
@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_rendering_matches_transformers(folder_for, name, add_generation_prompt):
    transformers = pytest.importorskip("transformers")
    ref = transformers.AutoTokenizer.from_pretrained(str(folder_for[name]))
    ours = from_pretrained(folder_for[name])
    conversations = CONVERSATIONS if name != "features" else CONVERSATIONS + [
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "reasoning": "hmm"},
         {"role": "stop", "content": ""}, {"role": "user", "content": "never"}]]
    for messages in conversations:
        expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected
        ids = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
        ids = ids["input_ids"] if not isinstance(ids, list) else ids
        assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True) == ids


@pytest.mark.reference
def test_tools_and_extra_variables_match_transformers(folder_for):
    transformers = pytest.importorskip("transformers")
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Wetter <heute> & morgen",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    ref = transformers.AutoTokenizer.from_pretrained(str(folder_for["qwen"]))
    ours = from_pretrained(folder_for["qwen"])
    messages = CONVERSATIONS[1]
    assert ours.apply_chat_template(messages, tools=tools) == ref.apply_chat_template(messages, tools=tools, tokenize=False)
    ref3 = transformers.AutoTokenizer.from_pretrained(str(folder_for["llama3"]))
    ours3 = from_pretrained(folder_for["llama3"])
    assert (ours3.apply_chat_template(messages, date_string="1 Jan 2030")
            == ref3.apply_chat_template(messages, date_string="1 Jan 2030", tokenize=False))


def test_chat_template_file_and_named_templates(tmp_path):
    from test_tokenizer_hf import _minimal, _write
    _write(tmp_path, _minimal(), config={"chat_template": [{"name": "tool_use", "template": "T"},
                                                           {"name": "default", "template": "D{{ messages|length }}"}]})
    assert from_pretrained(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]) == "D1"
    (tmp_path / "chat_template.jinja").write_text("J{{ messages[0].content }}")
    assert from_pretrained(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]) == "Jx"


def test_raise_exception_in_a_template_is_one_clear_error():
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        render_chat_template(GEMMA, [{"role": "assistant", "content": "first"}], bos_token="<bos>")


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ raise_exception.__globals__ }}",
    "{{ (messages | attr('__class__')).__base__ }}",
    "{{ messages.append({'role': 'x'}) }}",
    "{{ messages[0].update(role='x') }}",
    "{% set ns = namespace(__class__=1) %}",
    "{% set ns = namespace() %}{% set ns._x = 1 %}",
    "{{ dict.__class__ }}",
])
def test_hostile_templates_are_refused(template):
    with pytest.raises(ChatTemplateError, match="sandbox|unsafe|refused") as e:
        render_chat_template(template, [{"role": "user", "content": "hi"}])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("template", ["{% include '/etc/passwd' %}", "{% import '/etc/passwd' as x %}",
                                      "{% extends '/etc/hostname' %}"])
def test_templates_cannot_read_files(template):
    with pytest.raises(ChatTemplateError, match="no loader|failed") as e:
        render_chat_template(template, [{"role": "user", "content": "hi"}])
    assert "root:" not in str(e.value)


def test_broken_template_and_bad_messages():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat_template("{% for m in messages %}", [])
    with pytest.raises(ChatTemplateError, match=r"messages\[0\] must be a dict"):
        render_chat_template("x", ["hello"])
    assert issubclass(ChatTemplateError, TokenizerError)


def test_missing_jinja2_names_the_chat_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ChatTemplateError, match=r"chat.*extra"):
        render_chat_template("a template not compiled before {{ 1 }}", [])
