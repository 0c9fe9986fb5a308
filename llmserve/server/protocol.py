"""Request bodies of the OpenAI API as pydantic models, and their translation to SamplingParams.

Validation here gives clients 400s that name the bad field. Types and the OpenAI ranges are
declared on the fields; the rules between fields (min_tokens <= max_tokens, no empty stop string, ...)
live in SamplingParams alone, which every request builds while it is validated, so its
InvalidParameter surfaces as a pydantic error too and errors.from_validation_error names the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from llmserve.guided import GuidedDecoding
from llmserve.sampling_params import (
    MAX_LOGPROBS,
    REPETITION_PENALTY_MAX,
    REPETITION_PENALTY_MIN,
    SEED_MAX,
    SEED_MIN,
    InvalidParameter,
    SamplingParams,
)
from llmserve.server.guided_fields import GuidedFields
from llmserve.server.unsupported import CHAT, COMPLETIONS, refuse_unsupported
from llmserve.tool_calls.schema import forced_tool_call_schema

TokenIds = list[StrictInt]


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class ServedFields(BaseModel):
    """Fields every model endpoint takes: which model, who asks, the class and the response cache switch."""

    # Unknown fields are ignored, as OpenAI and vLLM do, so newer clients keep working. No float
    # may be inf or NaN (1e999 parses as inf): none means anything to the sampler.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None
    # OpenAI's end-user id for its abuse monitoring: accepted and, as this server monitors nothing, a no-op.
    user: str | None = None
    priority: Any = None  # a service class: its rank or name; None: the default class
    cache: StrictBool | None = None  # false: neither read nor stored by the response cache

    @field_validator("priority")
    @classmethod
    def _priority_is_a_rank_or_name(cls, value: Any) -> Any:
        if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ValueError("priority must be a service class name or an integer rank")


class _SamplingFields(GuidedFields, ServedFields):
    """Fields shared by both endpoints: OpenAI's, then vLLM's extensions under vLLM's names."""

    n: StrictInt = Field(1, ge=1, le=16)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: StrictInt | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    top_k: StrictInt | None = Field(None, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, ge=REPETITION_PENALTY_MIN, le=REPETITION_PENALTY_MAX)
    ignore_eos: StrictBool = False
    min_tokens: StrictInt = Field(0, ge=0)
    stop_token_ids: list[StrictInt] | None = None
    skip_special_tokens: StrictBool = True
    include_stop_str_in_output: StrictBool = False
    # vLLM's: the log-probability of each prompt token given those before it, with this many alternatives.
    prompt_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    _params: SamplingParams = PrivateAttr()

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _limits(self) -> tuple[int | None, int | None, int | None]:
        """(max_tokens, logprobs, prompt_logprobs) as this endpoint spells them."""
        raise NotImplementedError

    def _checked_prompt_logprobs(self) -> int | None:
        # As vLLM: a stream has no place for them (echo's prompt logprobs do go out in its first chunk).
        if self.prompt_logprobs is not None and self.stream:
            raise InvalidParameter("prompt_logprobs are not available when stream is true", "prompt_logprobs")
        return self.prompt_logprobs

    @model_validator(mode="after")
    def _sampling_params_are_valid(self) -> _SamplingFields:
        # SamplingParams raises InvalidParameter (a ValueError), which pydantic keeps in the error's ctx.
        self._params = self.sampling_params(*self._limits())
        return self

    @property
    def params(self) -> SamplingParams:
        """The SamplingParams built (and so checked) while the body was validated."""
        return self._params

    def sampling_params(self, max_tokens: int | None, logprobs: int | None,
                        prompt_logprobs: int | None = None) -> SamplingParams:
        return SamplingParams(
            n=self.n, temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0, min_p=self.min_p,
            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, seed=self.seed, max_tokens=max_tokens,
            min_tokens=self.min_tokens, stop=self.stop, stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos, logprobs=logprobs, skip_special_tokens=self.skip_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output, guided=self.guided(),
            prompt_logprobs=prompt_logprobs,
        )


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    max_tokens: StrictInt | None = Field(16, ge=0)  # 0 only with echo: the prompt alone
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: StrictBool = False  # the text (and logprobs) of each choice start with its prompt

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        return refuse_unsupported(data, COMPLETIONS)

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be an empty list")
        return prompt

    def _limits(self) -> tuple[int | None, int | None, int | None]:
        if self.max_tokens == 0 and not self.echo:
            raise InvalidParameter("max_tokens must be at least 1; 0 is allowed only with echo, which returns the "
                                   "prompt alone", "max_tokens")
        prompt_logprobs = self._checked_prompt_logprobs()
        if self.echo and self.logprobs is not None:  # echoed logprobs start with the prompt's, as vLLM's
            prompt_logprobs = max(prompt_logprobs or 0, self.logprobs)
        return self.max_tokens, self.logprobs, prompt_logprobs

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a string, or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class MediaPart(BaseModel):
    """An image, audio or file part: parsed whatever its shape, so that text_only() can refuse it in
    words a client understands instead of a schema mismatch about strings."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["image_url", "input_audio", "file"]


ContentPart = Annotated[TextPart | MediaPart, Field(discriminator="type")]


class FunctionDefinition(BaseModel):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; templates show it to the model as given
    strict: StrictBool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: FunctionName


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON, as the model wrote it


class AssistantToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    def as_template_call(self) -> dict[str, Any]:
        # HF templates write arguments with `| tojson`: they expect the object, not its JSON text.
        try:
            arguments: Any = json.loads(self.function.arguments)
        except json.JSONDecodeError:
            arguments = self.function.arguments
        return {"id": self.id, "type": "function", "function": {"name": self.function.name, "arguments": arguments}}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[AssistantToolCall] | None = None  # assistant messages only
    tool_call_id: str | None = None  # tool messages only: the call this answers

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessage:
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a message with role 'tool' needs the 'tool_call_id' it answers")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def as_template_message(self) -> dict[str, Any]:
        # Our chat templates take plain strings; text parts are joined the way OpenAI reads them.
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content if isinstance(part, TextPart))
        # "developer" is OpenAI's newer name for the system role; templates only know "system".
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {"role": role, "content": content or ""}
        if self.name is not None:  # a participant's name: templates that know it render it, as transformers'
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [call.as_template_call() for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


def text_only(messages: list[ChatMessage]) -> None:
    """Refuse the first image, audio or file part, by its place: the model reads text only."""
    for i, message in enumerate(messages):
        for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
            if isinstance(part, MediaPart):
                param = f"messages.{i}.content.{j}"
                raise InvalidParameter(f"{param}: this model takes text only; {part.type!r} content parts are "
                                       "not supported", param)


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: StrictBool = True
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: StrictBool = True

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        return refuse_unsupported(data, CHAT)

    @model_validator(mode="after")
    def _text_only(self) -> ChatCompletionRequest:
        text_only(self.messages)
        return self

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    def guided(self) -> GuidedDecoding | None:
        """The body's constraint; `tool_choice` "required" or a named function is one too (the JSON
        schema of tool_calls.forced_tool_call_schema), and cannot be combined with another. Checked
        here because SamplingParams, built while the body is validated, takes the constraint."""
        self._check_tool_choice()
        forced = self.forced_tool_call()
        constraint = super().guided()
        if forced is None or constraint is None:
            return forced or constraint
        raise InvalidParameter(f"tool_choice {self._choice_words()} constrains the output to the call, so it "
                               f"cannot be combined with {self._asked()[0]}", "tool_choice")

    def _check_tool_choice(self) -> None:
        choice = self.tool_choice
        if choice is None:
            return
        if not self.tools:
            raise InvalidParameter("tool_choice is only allowed when tools are specified", "tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in {t.function.name for t in self.tools}:
            raise InvalidParameter(f"tool_choice names the function {choice.function.name!r}, which is not among "
                                   "the tools", "tool_choice")

    def _choice_words(self) -> str:
        return "'required'" if self.forced_function is None else f"naming {self.forced_function!r}"

    @property
    def forces_a_call(self) -> bool:
        return self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)

    @property
    def forced_function(self) -> str | None:
        """The function a named tool_choice forces; None otherwise."""
        return self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None

    def forced_tool_call(self) -> GuidedDecoding | None:
        """The JSON schema a forced call is generated under; None when no call is forced."""
        if not self.forces_a_call or not self.tools:
            return None
        tools = [tool.model_dump(exclude_none=True) for tool in self.tools]
        choice = self.tool_choice.model_dump() if isinstance(self.tool_choice, NamedToolChoice) else self.tool_choice
        schema = forced_tool_call_schema(tools, choice, self.parallel_tool_calls)  # type: ignore[arg-type]
        return GuidedDecoding(json=schema, param="tools")

    @property
    def effective_tool_choice(self) -> str:
        """"auto", "none", "required" or "function" (named); OpenAI's default is "auto" when there are tools."""
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        return self.tool_choice if isinstance(self.tool_choice, str) else "function"

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools as the chat template receives them (transformers' `tools=`); none under "none"."""
        if not self.tools or self.effective_tool_choice == "none":
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]

    def _limits(self) -> tuple[int | None, int | None, int | None]:
        return self.requested_max_tokens, self.num_logprobs, self._checked_prompt_logprobs()

    @property
    def requested_max_tokens(self) -> int | None:
        """None means: up to the context length, as OpenAI's chat endpoint does."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        if not self.logprobs:
            return None
        return self.top_logprobs or 0


def body_schemas(models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """JSON schemas of request bodies and of every model they use, by name, for an OpenAPI
    document's components/schemas (which is where their references point)."""
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas
