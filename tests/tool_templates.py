"""Small chat templates with tool support for the tiny test models (whose own ChatML template has
none): the Qwen2.5/Hermes layout (<tools> in the system turn, <tool_call> JSON, tool results as
<tool_response> in a user turn) and a Llama-3.x-style one (JSON calls with "parameters", tool
results in an "ipython" turn). Both use the tiny tokenizer's ChatML markers."""

HERMES_TOOL_TEMPLATE = """{%- if tools %}
<|im_start|>system
You are a tiny test model.

# Tools

You may call one or more functions. Function signatures are within <tools></tools>:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
Return each call as a JSON object within <tool_call></tool_call> tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% else %}
<|im_start|>system
You are a tiny test model.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role in ["user", "system"] %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% elif message.role == "assistant" %}
<|im_start|>assistant
{%- if message.content %}
{{ message.content }}
{%- endif %}
{%- for call in message.tool_calls | default([]) %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""

LLAMA3_TOOL_TEMPLATE = """{%- for message in messages %}
{%- if message.role == "user" and loop.first and tools %}
<|im_start|>user
Given the following functions, respond with a JSON for a function call with its proper arguments
in the format {"name": function name, "parameters": dictionary of argument name and its value}.
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}

{{ message.content }}<|im_end|>
{% elif message.role == "assistant" and message.tool_calls %}
<|im_start|>assistant
{%- for call in message.tool_calls %}
{"name": "{{ call.function.name }}", "parameters": {{ call.function.arguments | tojson }}}
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}
<|im_start|>ipython
{{ message.content }}<|im_end|>
{% else %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""
