"""CLI verbs of the serve group: `apr serve`, an OpenAI-compatible HTTP server with continuous batching."""

from __future__ import annotations

import signal
from enum import Enum

import typer

from apr.cli.engine import KvCacheChoice, NumericsChoice
from apr.serve.defaults import DEFAULT_MAX_BODY_MB, DEFAULT_PREFILL_CHUNK


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""

    @app.command("serve")
    def serve(
        model: str = typer.Argument(..., help="Model path, cached name or ref (e.g. qwen2.5-coder:1.5b)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
        port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port; 0 picks a free one."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, max=256, help="Sequences decoded together."),
        api_key: str | None = typer.Option(None, "--api-key", help="Require 'Authorization: Bearer KEY' on /v1."),
        device: Device = typer.Option(Device.auto, "--device", help="Where the engine runs."),
        numerics: NumericsChoice = typer.Option(
            NumericsChoice.fast,
            "--numerics",
            help="fast (default) or exact: float32 reference numerics, for lm-eval log-likelihoods.",
        ),
        kv_cache: KvCacheChoice = typer.Option(
            KvCacheChoice.f32,
            "--kv-cache",
            help="f32 (default) or f16: keys and values in half precision, half the KV cache memory (long "
            "contexts); apr's native CPU kernels only. Rounds attention: greedy replies may differ.",
        ),
        max_context: int | None = typer.Option(
            None, "--max-context", min=1, help="Cap prompt + completion tokens (default: the model's context)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seeds the sampling of requests that send no seed."),
        prefix_cache_mb: int = typer.Option(
            1024, "--prefix-cache-mb", min=0, help="Memory for KV caches reused across requests (0: off)."
        ),
        prefill_chunk: int = typer.Option(
            DEFAULT_PREFILL_CHUNK,
            "--prefill-chunk",
            min=1,
            help="Prompt tokens prefilled (or scored) per step; longer prompts interleave with other streams.",
        ),
        max_body_mb: float = typer.Option(
            DEFAULT_MAX_BODY_MB, "--max-body-mb", min=0.001, help="Largest request body accepted (413 beyond)."
        ),
        max_loaded_mb: float | None = typer.Option(
            None,
            "--max-loaded-mb",
            min=0.0,
            help="Weights of all loaded models, the default included, in MiB (default: half the memory; 0: no bound).",
        ),
        max_models: int = typer.Option(
            0, "--max-models", min=0, help="Models loaded at once, the default included (0: no bound)."
        ),
        idle_unload_s: float = typer.Option(
            600.0,
            "--idle-unload-s",
            min=0.0,
            help="Unload a model other than the default after this many seconds without requests (0: never).",
        ),
        lookup: int = typer.Option(
            0,
            "--lookup",
            min=0,
            max=64,
            help="Prompt-lookup decoding: draft up to N tokens a step from each request's own n-grams, verified "
            "in one forward pass (0: off; CPU eager only). Greedy replies are unchanged token for token.",
        ),
        shutdown_grace: float = typer.Option(
            2.0, "--shutdown-grace", min=0.0, help="Seconds in-flight requests may run on after SIGINT/SIGTERM."
        ),
    ) -> None:
        """Serve MODEL over OpenAI-compatible HTTP (/v1/completions, /v1/chat/completions, /v1/models, /health).

        Requests may name any other model in the apr cache: it is loaded on demand, within --max-loaded-mb and
        --max-models (least recently used idle model evicted first) and unloaded after --idle-unload-s idle.
        """
        import logging

        # A stop request during the (long) model load ends it like Ctrl-C: one line, no traceback.
        signal.signal(signal.SIGTERM, _interrupt)
        logging.basicConfig(level=logging.WARNING, format="apr serve: %(levelname)s: %(message)s")

        from apr.hub import resolve_model_arg
        from apr.serve import server
        from apr.serve.served import ServeSettings

        settings = ServeSettings(
            model_arg=model,
            host=host,
            port=port,
            batch_size=batch_size,
            api_key=api_key,
            max_context=max_context,
            seed=seed,
            graceful_timeout_s=shutdown_grace,
            prefix_cache_mb=prefix_cache_mb,
            prefill_chunk=prefill_chunk,
            max_body_bytes=int(max_body_mb * 2**20),
            max_loaded_mb=max_loaded_mb,
            max_models=max_models,
            idle_unload_s=idle_unload_s,
            device=device.value,
            numerics=numerics.value,
            kv_cache=kv_cache.value,
            lookup=lookup,
        )
        model_path = resolve_model_arg(model)
        # Bind before the (slow) model load, so a busy port fails at once.
        sock = server.bind(host, port)
        # torch and the app come in only now: bad arguments above are refused without that wait.
        from apr.cli.engine_session import layer_bar, warn_kernel_fallback
        from apr.engine import load_engine
        from apr.serve.app import create_app

        with layer_bar(f"loading {model_path.name} on {device.value}") as progress:
            engine = load_engine(
                model_path,
                device=device.value,
                numerics=numerics.value,
                kv_cache=settings.kv_cache,
                progress=progress,
            )

        warn_kernel_fallback(engine)
        app = create_app(engine, settings)
        stopped_by = server.run(app, settings, sock, announce=lambda line: typer.echo(line))
        names = ", ".join(signal.Signals(number).name for number in stopped_by) or "shutdown"
        typer.echo(f"apr serve: stopped ({names})")
