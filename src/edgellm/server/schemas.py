"""Request bodies of the OpenAI-compatible endpoints (pydantic): they validate input and make the OpenAPI schema
that clients and fuzzers read. Unknown fields are ignored, as OpenAI's own server does for forward compatibility."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP = 16  # stop strings per request
MAX_LOGIT_BIAS = 1024  # entries of logit_bias
MAX_TEXT = 1 << 20  # characters of one prompt or message


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchemaFormat(_Body):
    name: str = Field("response", max_length=256)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class Sampling(_Body):
    """Fields shared by both completion endpoints (llama.cpp's sampler chain; OpenAI's names where it has one)."""

    model: str | None = Field(None, max_length=512)
    max_tokens: int | None = Field(None, ge=1, le=1 << 20)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0, le=1 << 20)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0, le=10.0)
    repeat_last_n: int = Field(64, ge=0, le=1 << 20)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-(1 << 63), le=(1 << 64) - 1)
    stop: Annotated[str, Field(max_length=1024)] | list[Annotated[str, Field(max_length=1024)]] | None = Field(
        None, max_length=MAX_STOP
    )
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(None, max_length=MAX_LOGIT_BIAS)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    user: str | None = Field(None, max_length=512)


class CompletionRequest(Sampling):
    prompt: Annotated[str, Field(max_length=MAX_TEXT)] | list[Annotated[int, Field(ge=0, le=1 << 31)]] | list[
        Annotated[str, Field(max_length=MAX_TEXT)]
    ] = Field(..., description="text or token ids (one prompt)")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    max_tokens: int | None = Field(16, ge=1, le=1 << 20)


class TextPart(_Body):
    type: Literal["text"]
    text: str = Field(..., max_length=MAX_TEXT)


class ToolCallFunction(_Body):
    name: str = Field(..., max_length=256)
    arguments: str = Field("", max_length=MAX_TEXT)


class ToolCall(_Body):
    id: str = Field("", max_length=256)
    type: Literal["function"] = "function"
    function: ToolCallFunction


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, Field(max_length=MAX_TEXT)] | list[TextPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCall] | None = Field(None, max_length=64)
    tool_call_id: str | None = Field(None, max_length=256)


class FunctionSpec(_Body):
    name: str = Field(..., max_length=256)
    description: str | None = Field(None, max_length=MAX_TEXT)
    parameters: dict[str, Any] | None = None


class Tool(_Body):
    type: Literal["function"] = "function"
    function: FunctionSpec


class ChatRequest(Sampling):
    messages: list[Message] = Field(..., min_length=1, max_length=1024)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = Field(None, ge=1, le=1 << 20)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any], None] = None


class TokenizeRequest(_Body):
    content: str = Field(..., max_length=MAX_TEXT)
    add_special: bool = False


class DetokenizeRequest(_Body):
    tokens: list[Annotated[int, Field(ge=-(1 << 31), le=1 << 31)]] = Field(..., max_length=1 << 20)
