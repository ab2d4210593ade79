"""OpenAI's Responses API (`/v1/responses`): its request, its response object and its stream's typed events.

A Responses request is a conversation of input items (messages, function calls and their outputs, reasoning);
parley answers it as it answers a chat completion: the items become chat messages (`to_chat_request`), and the
chat request becomes parley's one GenerationRequest. The reply comes back as output items: the reasoning (for
a reasoning model), the message, the function calls.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from parley.engines.base import Temperature, TopP
from parley.serving.openai_schemas import (
    MAX_MESSAGES,
    MAX_TOOLS,
    MAX_TOP_LOGPROBS,
    ChatCompletionRequest,
    UnsupportedField,
    _Request,
    _Response,
)

MAX_METADATA = 16  # OpenAI's: keys of `metadata`
LOGPROBS_INCLUDE = "message.output_text.logprobs"


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- the request ----------------------------------------------------------------------------------


class ContentPart(BaseModel):
    """A part of a message's content. Only text is supported: images, files and audio are refused."""

    model_config = ConfigDict(extra="allow", strict=True)  # annotations, logprobs of an output_text given back

    type: str
    text: str | None = None

    def text_of(self) -> str:
        if self.type not in ("input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text"):
            raise UnsupportedField("input", f"content of type '{self.type}' is not supported (text only)")
        return self.text if self.type != "refusal" else self.model_extra.get("refusal", self.text) or ""


def _text(content: str | list[ContentPart]) -> str:
    return content if isinstance(content, str) else "".join(p.text_of() or "" for p in content)


class MessageItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None
    phase: str | None = None


class FunctionCallItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class ReasoningItem(BaseModel):
    """A reasoning item given back: as with chat, earlier reasoning is not shown to the model again."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ContentPart] = Field(default_factory=list)
    content: list[ContentPart] | None = None
    encrypted_content: str | None = None
    status: str | None = None


def _item_type(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return kind if kind in ("message", "function_call", "function_call_output", "reasoning") else "unsupported"


class UnsupportedItem(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")] | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[UnsupportedItem, Tag("unsupported")],
    Discriminator(_item_type),
]


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    name: str = Field(max_length=64)
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None

    def as_chat_tool(self) -> dict:
        function = {"name": self.name, "parameters": self.parameters or {"type": "object", "properties": {}}}
        if self.description is not None:
            function["description"] = self.description
        if self.strict is not None:
            function["strict"] = self.strict
        return {"type": "function", "function": function}


class FunctionChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    def as_response_format(self) -> dict | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        if self.schema_ is None or not self.name:
            raise UnsupportedField("text.format", "a json_schema format needs a name and a schema")
        spec = {"name": self.name, "schema": self.schema_}
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}

    def echoed(self) -> dict:
        return self.model_dump(by_alias=True, exclude_none=True)


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    format: TextFormat = Field(default_factory=TextFormat)
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesStreamOptions(_Request):
    include_obfuscation: bool | None = None


class ResponsesRequest(_Request):
    model: str
    input: str | Annotated[list[InputItem], Field(max_length=MAX_MESSAGES)]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    text: TextConfig | None = None
    tools: list[dict] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    stream: bool | None = False
    stream_options: ResponsesStreamOptions | None = None
    store: bool | None = True  # OpenAI's default
    previous_response_id: str | None = None
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=MAX_METADATA)  # OpenAI's bounds
    reasoning: ReasoningConfig | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[Annotated[str, Field(max_length=100)]] | None = Field(None, max_length=16)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    background: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    max_tool_calls: int | None = Field(None, ge=1)
    conversation: str | dict | None = None
    prompt: dict | None = None
    # vLLM's extension, as on chat: exactly max_output_tokens tokens (what `parley bench --ignore-eos` asks).
    ignore_eos: bool | None = None

    @property
    def wants_logprobs(self) -> bool:
        """The answer's log-probabilities are returned when `include` asks for them, as OpenAI's are."""
        return LOGPROBS_INCLUDE in (self.include or [])

    def input_items(self) -> list[BaseModel]:
        """The input as items (a string is one user message), each checked: anything but text is refused."""
        items = [MessageItem(role="user", content=self.input)] if isinstance(self.input, str) else list(self.input)
        for item in items:
            if isinstance(item, UnsupportedItem):
                raise UnsupportedField("input", f"input items of type '{item.type}' are not supported")
            if isinstance(item, MessageItem) and not isinstance(item.content, str):
                for part in item.content:
                    part.text_of()
        return items

    def function_tools(self) -> list[FunctionTool]:
        tools = []
        for raw in self.tools or []:
            if raw.get("type") != "function":
                raise UnsupportedField("tools", f"tools of type '{raw.get('type')}' are not supported (function tools "
                                                "only)")
            try:
                tools.append(FunctionTool.model_validate(raw))
            except ValueError as exc:
                raise UnsupportedField("tools", f"invalid function tool: {exc}") from None
        return tools

    def to_chat_request(self, history: list[BaseModel]) -> ChatCompletionRequest:
        """The chat request for this conversation: `history` (the previous responses' items) then this input."""
        self._refuse_what_it_cannot_do()
        messages: list[dict] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        for item in history + self.input_items():
            if isinstance(item, MessageItem):
                messages.append({"role": item.role, "content": _text(item.content)})
            elif isinstance(item, FunctionCallItem):
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None:
                    last["tool_calls"].append(call)
                else:
                    messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            elif isinstance(item, FunctionCallOutputItem):
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output)})
        if not messages:
            raise UnsupportedField("input", "the input is empty")
        tools = self.function_tools()
        choice: str | dict | None = self.tool_choice
        if isinstance(choice, FunctionChoice):
            choice = {"type": "function", "function": {"name": choice.name}}
        body: dict = {
            "model": self.model, "messages": messages, "temperature": self.temperature, "top_p": self.top_p,
            "max_completion_tokens": self.max_output_tokens, "tools": [t.as_chat_tool() for t in tools] or None,
            "tool_choice": choice, "parallel_tool_calls": self.parallel_tool_calls,
            "response_format": self.text.format.as_response_format() if self.text else None,
            "reasoning_effort": self.reasoning.effort if self.reasoning else None,
            "logprobs": True if self.wants_logprobs else None,
            "top_logprobs": self.top_logprobs if self.wants_logprobs else None,
            "ignore_eos": self.ignore_eos,
        }
        return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})

    def _refuse_what_it_cannot_do(self) -> None:
        if self.background:
            raise UnsupportedField("background", "background responses are not supported by this server")
        if self.conversation is not None:
            raise UnsupportedField("conversation", "conversations are not supported by this server; use "
                                                   "previous_response_id")
        if self.prompt is not None:
            raise UnsupportedField("prompt", "prompt templates are not supported by this server")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise UnsupportedField("tool_choice", "tool_choice needs tools")


# -- the response ---------------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str = ""
    annotations: list = Field(default_factory=list)
    logprobs: list = Field(default_factory=list)


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str = ""


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str = Field(default_factory=lambda: item_id("msg"))
    status: ItemStatus = "in_progress"
    role: Literal["assistant"] = "assistant"
    content: list[OutputText] = Field(default_factory=list)


class OutputFunctionCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str = Field(default_factory=lambda: item_id("fc"))
    status: ItemStatus = "in_progress"
    call_id: str
    name: str
    arguments: str = ""


class OutputReasoning(BaseModel):
    type: Literal["reasoning"] = "reasoning"
    id: str = Field(default_factory=lambda: item_id("rs"))
    status: ItemStatus = "in_progress"
    summary: list = Field(default_factory=list)
    content: list[ReasoningText] = Field(default_factory=list)


OutputItem = Annotated[OutputMessage | OutputFunctionCall | OutputReasoning, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(_Response):
    id: str = Field(default_factory=lambda: item_id("resp"))
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: Literal["in_progress", "completed", "incomplete", "failed"] = "in_progress"
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict = Field(default_factory=lambda: {"effort": None, "summary": None})
    store: bool = True
    temperature: float | None = None
    top_p: float | None = None
    text: dict = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict = "auto"
    tools: list[dict] = Field(default_factory=list)
    top_logprobs: int | None = None
    truncation: str = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    background: bool = False
    service_tier: str = "default"

    @classmethod
    def answering(cls, body: ResponsesRequest, store: bool) -> ResponseObject:
        """The response to `body`, in progress, with the settings it echoes."""
        choice = body.tool_choice
        return cls(model=body.model, instructions=body.instructions, max_output_tokens=body.max_output_tokens,
                   parallel_tool_calls=body.parallel_tool_calls is not False,
                   previous_response_id=body.previous_response_id, store=store, temperature=body.temperature,
                   top_p=body.top_p, text={"format": body.text.format.echoed()} if body.text else {"format": {"type": "text"}},
                   tool_choice=choice.model_dump() if isinstance(choice, FunctionChoice) else choice or "auto",
                   tools=[t.model_dump(exclude_none=True) for t in body.function_tools()], top_logprobs=body.top_logprobs,
                   user=body.user, metadata=body.metadata or {},
                   reasoning={"effort": body.reasoning.effort if body.reasoning else None,
                              "summary": body.reasoning.summary if body.reasoning else None})


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict]
    first_id: str | None
    last_id: str | None
    has_more: bool = False
