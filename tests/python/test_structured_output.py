"""Structured output through the official Python SDK: `chat.completions.parse`
with a Pydantic model sends a strict JSON schema and returns a parsed object.
The tiny model's weights are random, so only the constraint makes the reply
valid."""

from typing import Literal, Optional

import openai
import pydantic
import pytest


class Endereco(pydantic.BaseModel):
    cidade: str = pydantic.Field(max_length=10)
    uf: Literal["SP", "RJ", "MG", "BA"]


class Pessoa(pydantic.BaseModel):
    nome: str = pydantic.Field(max_length=8)
    idade: int = pydantic.Field(ge=0, le=120)
    apelido: Optional[str] = pydantic.Field(max_length=6)
    endereco: Endereco
    notas: list[int] = pydantic.Field(min_length=1, max_length=3)


def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("seed", range(6))
def test_parse_returns_the_pydantic_object(server, seed):
    r = client(server).chat.completions.parse(
        model="tiny",
        messages=[{"role": "user", "content": "Quem é você?"}],
        response_format=Pessoa,
        temperature=1.0,
        seed=seed,
        max_tokens=300,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice
    person = choice.message.parsed
    assert isinstance(person, Pessoa), choice.message
    assert 0 <= person.idade <= 120 and len(person.nome) <= 8
    assert person.endereco.uf in ("SP", "RJ", "MG", "BA")
    # The same object as parsed by Pydantic from the raw text.
    assert Pessoa.model_validate_json(choice.message.content) == person


def test_an_unusable_schema_raises_bad_request(server):
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Oi"}], max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}},
        )
    assert e.value.body["param"] == "response_format"
