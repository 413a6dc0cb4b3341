"""From `apr certify`'s arguments to an endpoint certification plan: the playbook (given, or the tier's template),
its ``endpoint:`` section with the command line's options laid over it, the served model and the output folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apr.errors import AprError
from apr.qa.axes import Tier
from apr.qa.endpoint.run import EndpointPlan, default_output
from apr.qa.endpoint.spec import EndpointSpec, base_url
from apr.qa.playbook import Playbook
from apr.qa.scenarios import PromptStyle


@dataclass(frozen=True)
class EndpointArgs:
    """The endpoint options of `apr certify` as given (None: not given)."""

    url: str | None = None
    served_model: str | None = None
    api_key_env: str | None = None
    api: str | None = None
    concurrency: int | None = None
    rate_limit_rps: float | None = None
    timeout_s: float | None = None

    def given(self) -> dict[str, Any]:
        """The options given, under their ``endpoint:`` section names."""
        names = {"timeout_s": "request_timeout_s"}
        return {names.get(k, k): v for k, v in self.__dict__.items() if v is not None}

    def only_with_an_endpoint(self) -> str | None:
        """The first option given that makes sense only for an endpoint (to refuse it without one)."""
        flags = {
            "served_model": "--served-model",
            "api_key_env": "--api-key-env",
            "api": "--api",
            "concurrency": "--concurrency",
            "rate_limit_rps": "--rate-limit",
        }
        return next((flag for name, flag in flags.items() if getattr(self, name) is not None), None)


def _from_template(tier: Tier, served_model: str, api: str) -> Playbook:
    from apr.qa.certify import TEMPLATES
    from apr.qa.playbook import load_template

    template = load_template(TEMPLATES / f"{tier.value}.yaml")
    data = template.model_dump(mode="python", by_alias=True, exclude={"extends"}, exclude_none=True)
    if api == "completion":  # a base model behind the completions API: prompts to continue, not questions
        data["scenarios"]["style"] = PromptStyle.COMPLETION
    slug = re.sub(r"[^a-z0-9.]+", "-", served_model.lower()).strip("-.")[:50] or "model"
    return Playbook.model_validate({**data, "name": f"{slug}-endpoint-{tier.value}", "model": {"ref": served_model}})


def endpoint_plan(
    playbook: Playbook | None,
    args: EndpointArgs,
    *,
    tier: Tier | None,
    output: Path | None,
    progress: bool,
    resume: bool = False,
) -> EndpointPlan | None:
    """The plan when this is an endpoint certification (``--endpoint``, or a playbook with ``endpoint:``); None when
    it certifies a checkpoint. AprError (one line) for any option that does not fit."""
    from pydantic import ValidationError

    from apr.qa.certify import with_tier

    if args.url is None and (playbook is None or playbook.endpoint is None):
        flag = args.only_with_an_endpoint()
        if flag is not None:
            raise AprError(f"{flag} needs --endpoint URL (or a playbook with an endpoint: section)")
        return None
    if args.url is not None:
        try:
            base_url(args.url)
        except ValueError as err:
            raise AprError(f"--endpoint: {err}") from None
    if playbook is None:
        if args.served_model is None:
            raise AprError("--endpoint needs --served-model NAME: the model name the server answers to")
        playbook = _from_template(tier or Tier.MVP, args.served_model, args.api or "chat")
    elif tier is not None:
        playbook = with_tier(playbook, tier)
    section = playbook.endpoint.model_dump(exclude_unset=True) if playbook.endpoint is not None else {}
    try:
        spec = EndpointSpec.model_validate({**section, **args.given()})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise AprError(f"endpoint {where}: {first['msg']}") from None
    served = spec.served_model or playbook.model.ref
    return EndpointPlan(
        spec=spec,
        served_model=served,
        playbook=playbook,
        output=output or default_output(served, playbook),
        explicit_output=output is not None,
        progress=progress,
        resume=resume,
    )
