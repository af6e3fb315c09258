"""``bestshot serve``: run the HTTP API and gallery with uvicorn (a command of bestshot/cli.py, imported when used)."""

from __future__ import annotations

import typer

from ..config import ImgCfg
from ..config_flags import option
from ..errors import BestshotError
from ..scale.flags import RayFlagCommand

app = typer.Typer(add_completion=False)


@app.command("serve", cls=RayFlagCommand)
def serve(
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 exposes the server to the network."
    ),
    port: int = typer.Option(7860, "--port", help="TCP port (AUTOMATIC1111's default is 7860)."),
    token: str | None = typer.Option(
        None, "--token", envvar="BESTSHOT_TOKEN", help="Require Authorization: Bearer TOKEN."
    ),
    api_auth: str | None = typer.Option(None, "--api-auth", help="A1111-style basic auth: user:pass[,user2:pass2]."),
    max_queue: int = typer.Option(8, "--max-queue", help="Jobs waiting or running before new requests get 429."),
    model: str = typer.Option("embedded", "--model", "-m", help="'embedded', a pipeline folder or a hub id."),
    scorer: str | None = typer.Option(None, "--scorer", help="CLIP used for ranking (default: the model's own)."),
    out_dir: str = typer.Option("images_out", "--out-dir", help="Where images go (and what /v1/images serves)."),
    curate_dir: str = typer.Option(
        "outputs", "--curate-dir", help="Curation folder (stage1/, metadata/, final/, trash/)."
    ),
    curate_config: str | None = typer.Option(
        None,
        "--curate-config",
        help="The curation workflow's config.yaml: enables 'upscale kept' and sets the curation folder to its outputs.",
    ),
    device: str | None = option(ImgCfg, "device"),  # flag and help: the ImgCfg field's metadata
    dtype: str = option(ImgCfg, "dtype", default="auto"),
    memory: str = option(ImgCfg, "memory", default="gpu"),
    max_batch: int | None = option(ImgCfg, "max_batch"),
    save_candidates: bool = typer.Option(False, "--save-candidates/--best-only", help="Also save losing candidates."),
    max_side: int = typer.Option(2048, "--max-side", help="Largest width/height a request may ask for."),
    max_steps: int = typer.Option(150, "--max-steps", help="Most denoising steps a request may ask for."),
    max_cost: float = typer.Option(
        4000.0,
        "--max-cost",
        help="Budget per request in native-size image steps: (width*height / native side²) x steps x candidates.",
    ),
    max_prompt_chars: int = typer.Option(10000, "--max-prompt-chars", help="Longest prompt (and negative prompt)."),
    max_body_mb: float = typer.Option(
        100.0,
        "--max-body-mb",
        help="Largest request body in MB, refused (413) before "
        "it is read; the default fits a few 2048² images in base64 (0: no cap).",
    ),
    job_timeout: float = typer.Option(
        900.0,
        "--job-timeout",
        help="Seconds a job may run; then it stops at its next step and returns what it finished (0: no timeout).",
    ),
    best_of: int = typer.Option(
        1,
        "--best-of",
        help="Default candidates per returned image on the A1111 routes "
        "(a request's best_of, override_settings or POST /options bestshot_best_of wins).",
    ),
    allowed_host: list[str] | None = typer.Option(
        None,
        "--allowed-host",
        help="Host header names accepted (repeatable; '*' accepts any). Default: localhost names and --host.",
    ),
    cors_allow_origins: str | None = typer.Option(
        None,
        "--cors-allow-origins",
        help="Browser origins allowed to "
        "read answers, comma-separated ('*': any). Default: only "
        "localhost / 127.0.0.1 / [::1] origins, any port.",
    ),
    cors_allow_origins_regex: str | None = typer.Option(
        None,
        "--cors-allow-origins-regex",
        help="Browser origins allowed, as a regular expression (with or without --cors-allow-origins).",
    ),
    ray: str | None = typer.Option(
        None,
        "--ray",
        metavar="[ADDRESS]",
        help="Serve on Ray Serve: one replica per "
        "GPU behind one HTTP address, --max-queue shared by all replicas. Bare --ray: a "
        "local Ray on this machine; ADDRESS: auto or HOST:PORT (the head's GCS). "
        "--out-dir must be on a filesystem every node shares.",
    ),
    replicas: int | None = typer.Option(
        None,
        "--replicas",
        help="With --ray: a fixed replica count (default: one per GPU of the cluster, one on a cluster without GPUs).",
    ),
    min_replicas: int | None = typer.Option(
        None, "--min-replicas", help="With --ray: autoscale down to this many replicas (0 allowed)."
    ),
    max_replicas: int | None = typer.Option(
        None, "--max-replicas", help="With --ray: autoscale up to this many replicas (default: one per GPU)."
    ),
    replica_gpus: float | None = typer.Option(
        None,
        "--replica-gpus",
        help="With --ray: GPUs per replica (default 1 when the cluster has GPUs, else 0; 0.5 puts two on a GPU).",
    ),
    replica_cpus: float | None = typer.Option(None, "--replica-cpus", help="With --ray: CPUs per replica (default 1)."),
    safety_checker: str | None = typer.Option(
        None, "--safety-checker", help="Image safety checker folder or hub id: flagged images are never returned."
    ),
    controlnet_dir: str | None = typer.Option(
        None, "--controlnet-dir", help="ControlNet folders (default: models/ControlNet beside --out-dir)."
    ),
    vae_dir: str | None = typer.Option(None, "--vae-dir", help="VAEs (default: models/VAE beside --out-dir)."),
) -> None:
    """Serve the AUTOMATIC1111-compatible API (/sdapi/v1), bestshot's API (/v1) and the gallery (/)."""
    try:
        import uvicorn  # noqa: F401 -- checked here, started by the code below
    except ImportError:
        raise BestshotError("bestshot serve needs fastapi and uvicorn — pip install fastapi uvicorn") from None
    from .a1111 import Limits
    from .app import ServerSettings, create_app

    if best_of < 1:
        raise BestshotError(f"--best-of must be >= 1 (got {best_of})")
    if not 0 <= max_body_mb < float("inf"):
        raise BestshotError(f"--max-body-mb must be a size in MB, >= 0 (got {max_body_mb}; 0: no cap)")
    if max_queue < 1:
        raise BestshotError(f"--max-queue must be >= 1 (got {max_queue})")
    if not 0 < port < 65536:
        raise BestshotError(f"--port must be between 1 and 65535 (got {port})")
    if ray is None and any(v is not None for v in (replicas, min_replicas, max_replicas, replica_gpus, replica_cpus)):
        raise BestshotError("--replicas, --min-replicas, --max-replicas, --replica-gpus and --replica-cpus need --ray")
    if host not in ("127.0.0.1", "localhost", "::1") and not (token or api_auth):
        typer.echo(
            f"warning: serving on {host} without --token or --api-auth: anyone who can reach it can use it", err=True
        )
    settings = ServerSettings(
        model=model,
        scorer=scorer,
        out_dir=out_dir,
        curate_dir=curate_dir,
        curate_config=curate_config,
        max_queue=max_queue,
        token=token,
        api_auth=api_auth,
        device=device,
        dtype=dtype,
        memory=memory,
        max_batch=max_batch,
        save_candidates=save_candidates,
        best_of=best_of,
        host=host,
        allowed_hosts=tuple(allowed_host) if allowed_host else None,
        cors_allow_origins=cors_allow_origins,
        cors_allow_origins_regex=cors_allow_origins_regex,
        safety_checker=safety_checker,
        controlnet_dir=controlnet_dir,
        vae_dir=vae_dir,
        limits=Limits(
            max_steps=max_steps,
            max_side=max_side,
            max_cost=max_cost,
            max_prompt_chars=max_prompt_chars,
            job_timeout=job_timeout or None,
            max_body_mb=max_body_mb or None,
        ),
    )
    if ray is not None:
        from .ray_serve import serve_on_ray

        serve_on_ray(
            settings,
            address=ray,
            host=host,
            port=port,
            replicas=replicas,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            num_gpus=replica_gpus,
            num_cpus=replica_cpus,
            echo=lambda m: typer.echo(m, err=True),
        )
        return
    application = create_app(settings)
    typer.echo(f"bestshot serving {model} on http://{host}:{port}/  (API docs: /docs, A1111 API: /sdapi/v1)", err=True)
    run_uvicorn(application, host, port)


def run_uvicorn(application, host: str, port: int, log_level: str = "info") -> None:
    """uvicorn, stopping within seconds on SIGTERM/SIGINT: the running job is interrupted at its next step
    (its finished images are stored and returned), queued jobs are answered 503, then uvicorn exits."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # noqa: ANN001 - uvicorn's signature
            jobs = getattr(application.state, "jobs", None)
            if jobs is not None:
                jobs.shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(application, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=8)
    _Server(config).run()
