"""Named chat templates, as data.

Each template is a few parameters (role names, separators, system text) over a *style*;
each style is one Jinja template, rendered by the same function that renders a tokenizer's
own `chat_template`. Names, parameters and renderings match FastChat's templates of the
same name (tests/test_templates.py compares them with the `fschat` package).

Variables a style sees: `system_message`, `system_prompt` (system_template filled in),
`turns` (examples, then the conversation: dicts with the template's `role` string and
`content`), `roles`, `sep`, `sep2`, `add_generation_prompt`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

STYLES: dict[str, str] = {
    "add_colon_single": (
        "{{ system_prompt ~ sep }}{% for m in turns %}{{ m.role ~ ': ' ~ m.content ~ sep }}{% endfor %}"
        "{% if add_generation_prompt %}{{ roles[1] ~ ':' }}{% endif %}"
    ),
    "add_colon_two": (
        "{{ system_prompt ~ sep }}{% for m in turns %}{{ m.role ~ ': ' ~ m.content }}"
        "{{ sep if loop.index0 % 2 == 0 else sep2 }}{% endfor %}"
        "{% if add_generation_prompt %}{{ roles[1] ~ ':' }}{% endif %}"
    ),
    "no_colon_single": (
        "{{ system_prompt }}{% for m in turns %}{{ m.role ~ m.content ~ sep }}{% endfor %}"
        "{% if add_generation_prompt %}{{ roles[1] }}{% endif %}"
    ),
    "chatglm3": (
        "{% if system_message %}{{ system_prompt }}{% endif %}"
        "{% for m in turns %}{{ m.role ~ '\\n' ~ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ roles[1] }}{% endif %}"
    ),
    "dolly": (
        "{{ system_prompt }}{% for m in turns %}{{ m.role ~ ':\\n' ~ m.content }}"
        "{{ sep if loop.index0 % 2 == 0 else sep2 ~ '\\n\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ roles[1] ~ ':\\n' }}{% endif %}"
    ),
    "rwkv": (
        "{{ system_prompt }}{% for m in turns %}"
        "{{ m.role ~ ': ' ~ (m.content | replace('\\r\\n', '\\n') | replace('\\n\\n', '\\n')) ~ '\\n\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ roles[1] ~ ':' }}{% endif %}"
    ),
    "llama2": (
        "{{ system_prompt if system_message else '[INST] ' }}{% for m in turns %}"
        "{% if loop.index0 == 0 %}{{ m.content ~ ' ' }}"
        "{% else %}{{ roles[loop.index0 % 2] ~ ' ' ~ m.content ~ (sep if loop.index0 % 2 == 0 else sep2) }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ roles[(turns | length) % 2] }}{% endif %}"
    ),
    "llama3": (
        "<|begin_of_text|>{% if system_message %}{{ system_prompt }}{% endif %}{% for m in turns %}"
        "{{ '<|start_header_id|>' ~ m.role ~ '<|end_header_id|>\\n\\n' ~ (m.content | trim) ~ '<|eot_id|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>' ~ roles[1] ~ '<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "chatml": (
        "{% if system_prompt %}{{ system_prompt ~ sep ~ '\\n' }}{% endif %}"
        "{% for m in turns %}{{ m.role ~ '\\n' ~ m.content ~ sep ~ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ roles[1] ~ '\\n' }}{% endif %}"
    ),
    "gemma": (
        "<bos>{% for m in turns %}{{ '<start_of_turn>' ~ m.role ~ '\\n' ~ m.content ~ sep }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>' ~ roles[1] ~ '\\n' }}{% endif %}"
    ),
}


@dataclass(frozen=True)
class NamedTemplate:
    name: str
    style: str
    roles: tuple[str, str]
    system_template: str = "{system_message}"
    system_message: str = ""
    sep: str = "\n"
    sep2: str = ""
    examples: tuple[tuple[str, str], ...] = ()  # (role string, content) shown before the conversation
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    @property
    def jinja(self) -> str:
        return STYLES[self.style]


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_ONE_SHOT_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_INSTRUCTION_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
_ONE_SHOT_EXAMPLE = (
    ("Human", "Got any creative ideas for a 10 year old’s birthday?"),
    (
        "Assistant",
        """Of course! Here are some creative ideas for a 10-year-old's birthday party:
1. Treasure Hunt: Organize a treasure hunt in your backyard or nearby park. Create clues and riddles for the kids to solve, leading them to hidden treasures and surprises.
2. Science Party: Plan a science-themed party where kids can engage in fun and interactive experiments. You can set up different stations with activities like making slime, erupting volcanoes, or creating simple chemical reactions.
3. Outdoor Movie Night: Set up a backyard movie night with a projector and a large screen or white sheet. Create a cozy seating area with blankets and pillows, and serve popcorn and snacks while the kids enjoy a favorite movie under the stars.
4. DIY Crafts Party: Arrange a craft party where kids can unleash their creativity. Provide a variety of craft supplies like beads, paints, and fabrics, and let them create their own unique masterpieces to take home as party favors.
5. Sports Olympics: Host a mini Olympics event with various sports and games. Set up different stations for activities like sack races, relay races, basketball shooting, and obstacle courses. Give out medals or certificates to the participants.
6. Cooking Party: Have a cooking-themed party where the kids can prepare their own mini pizzas, cupcakes, or cookies. Provide toppings, frosting, and decorating supplies, and let them get hands-on in the kitchen.
7. Superhero Training Camp: Create a superhero-themed party where the kids can engage in fun training activities. Set up an obstacle course, have them design their own superhero capes or masks, and organize superhero-themed games and challenges.
8. Outdoor Adventure: Plan an outdoor adventure party at a local park or nature reserve. Arrange activities like hiking, nature scavenger hunts, or a picnic with games. Encourage exploration and appreciation for the outdoors.
Remember to tailor the activities to the birthday child's interests and preferences. Have a great celebration!""",
    ),
)

_TEMPLATES = (
    NamedTemplate("raw", "no_colon_single", ("", ""), sep=""),
    NamedTemplate(
        "one_shot", "add_colon_single", ("Human", "Assistant"), system_message=_ONE_SHOT_SYSTEM,
        sep="\n### ", examples=_ONE_SHOT_EXAMPLE, stop=("###",),
    ),
    NamedTemplate("vicuna_v1.1", "add_colon_two", ("USER", "ASSISTANT"), system_message=_VICUNA_SYSTEM, sep=" ", sep2="</s>"),
    NamedTemplate(
        "alpaca", "add_colon_two", ("### Instruction", "### Response"), system_message=_INSTRUCTION_SYSTEM,
        sep="\n\n", sep2="</s>",
    ),
    NamedTemplate(
        "llama-2", "llama2", ("[INST]", "[/INST]"), system_template="[INST] <<SYS>>\n{system_message}\n<</SYS>>\n\n",
        sep=" ", sep2=" </s><s>",
    ),
    NamedTemplate(
        "llama-3", "llama3", ("user", "assistant"),
        system_template="<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>",
        sep="", stop=("<|eot_id|>",), stop_token_ids=(128001, 128009),
    ),
    NamedTemplate(
        "chatml", "chatml", ("<|im_start|>user", "<|im_start|>assistant"),
        system_template="<|im_start|>system\n{system_message}", sep="<|im_end|>", stop_token_ids=(32000, 32001),
    ),
    NamedTemplate("mistral", "llama2", ("[INST]", "[/INST]"), system_template="[INST] {system_message}\n", sep=" ", sep2="</s>"),
    NamedTemplate(
        "zephyr", "chatml", ("<|user|>", "<|assistant|>"), system_template="<|system|>\n{system_message}",
        sep="</s>", stop=("</s>",), stop_token_ids=(2,),
    ),
    NamedTemplate("gemma", "gemma", ("user", "model"), sep="<end_of_turn>\n", stop=("<end_of_turn>",)),
    NamedTemplate(
        "chatglm3", "chatglm3", ("<|user|>", "<|assistant|>"), system_template="<|system|>\n{system_message}",
        stop_token_ids=(64795, 64797, 2),
    ),
    NamedTemplate(
        "dolly_v2", "dolly", ("### Instruction", "### Response"), system_message=_INSTRUCTION_SYSTEM + "\n\n",
        sep="\n\n", sep2="### End",
    ),
    NamedTemplate(
        "falcon", "rwkv", ("User", "Assistant"), sep="\n", sep2="<|endoftext|>", stop=("\nUser",),
        stop_token_ids=tuple(range(12)),
    ),
)

NAMED_TEMPLATES: dict[str, NamedTemplate] = {t.name: t for t in _TEMPLATES}


def standalone_chat_template(t: NamedTemplate, bos_token: bool = False) -> str:
    """The named template as an ordinary chat template over `messages` (what a tokenizer's `chat_template`
    holds): the template's constants written in as literals ahead of its style. It renders exactly what
    the named template renders, so a model fine-tuned with it carries it in its tokenizer and is served
    with it as its own. `bos_token`: begin with the tokenizer's BOS text, for tokenizers that add one (the
    named template's prompts are tokenized with special tokens; a model's own template writes them)."""
    def lit(value) -> str:  # JSON strings, lists and objects are Jinja literals (ASCII escapes decode alike)
        return json.dumps(value, ensure_ascii=True)

    examples = [{"role": role, "content": content} for role, content in t.examples]
    head = (
        f"{{# {_WRITTEN_MARK} {t.name} #}}"  # so that whoever serves it can take the named template's stop rules
        f"{{% set roles = {lit(list(t.roles))} %}}{{% set sep = {lit(t.sep)} %}}{{% set sep2 = {lit(t.sep2)} %}}"
        "{% if messages and messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
        f"{{% else %}}{{% set system_message = {lit(t.system_message)} %}}{{% endif %}}"
        f"{{% set system_prompt = {lit(t.system_template)}.replace('{{system_message}}', system_message) %}}"
        f"{{% set ns = namespace(turns={lit(examples)}) %}}"
        "{% for m in messages %}{% if m['role'] != 'system' %}{% set ns.turns = ns.turns + "
        "[{'role': roles[0] if m['role'] == 'user' else roles[1], 'content': m['content']}] %}{% endif %}{% endfor %}"
        "{% set turns = ns.turns %}"
    )
    return head + ("{{ bos_token }}" if bos_token else "") + t.jinja


_WRITTEN_MARK = "parley named template"


def written_named_template(chat_template: str) -> NamedTemplate | None:
    """The named template a chat template was written from by `standalone_chat_template`, if it was."""
    match = re.match(r"\{# " + _WRITTEN_MARK + r" (\S+) #\}", chat_template)
    return NAMED_TEMPLATES.get(match.group(1)) if match else None
