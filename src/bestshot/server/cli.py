"""``bestshot serve``: run the HTTP API and gallery with uvicorn (mounted by bestshot/cli.py)."""

from __future__ import annotations

from typing import Optional

import typer

from ..errors import BestshotError

app = typer.Typer(add_completion=False)


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(7860, "--port", help="TCP port (AUTOMATIC1111's default is 7860)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="BESTSHOT_TOKEN", help="Require Authorization: Bearer TOKEN."),
    api_auth: Optional[str] = typer.Option(None, "--api-auth", help="A1111-style basic auth: user:pass[,user2:pass2]."),
    max_queue: int = typer.Option(8, "--max-queue", help="Jobs waiting or running before new requests get 429."),
    model: str = typer.Option("embedded", "--model", "-m", help="'embedded', a pipeline folder or a hub id."),
    scorer: Optional[str] = typer.Option(None, "--scorer", help="CLIP used for ranking (default: the model's own)."),
    out_dir: str = typer.Option("images_out", "--out-dir", help="Where images go (and what /v1/images serves)."),
    curate_dir: str = typer.Option("outputs", "--curate-dir", help="Curation folder (stage1/, metadata/, final/, trash/)."),
    curate_config: Optional[str] = typer.Option(None, "--curate-config", help="The curation workflow's config.yaml: "
                                                "enables 'upscale kept' and sets the curation folder to its outputs."),
    device: Optional[str] = typer.Option(None, "--device", help="cuda, cuda:1, cpu (default: cuda if present)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | float16 | bfloat16"),
    memory: str = typer.Option("gpu", "--memory", help="gpu | model_offload | sequential_offload"),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Largest batch per pipeline call."),
    save_candidates: bool = typer.Option(False, "--save-candidates/--best-only", help="Also save losing candidates."),
    max_side: int = typer.Option(2048, "--max-side", help="Largest width/height a request may ask for."),
    max_steps: int = typer.Option(150, "--max-steps", help="Most denoising steps a request may ask for."),
) -> None:
    """Serve the AUTOMATIC1111-compatible API (/sdapi/v1), bestshot's API (/v1) and the gallery (/)."""
    try:
        import uvicorn
    except ImportError:
        raise BestshotError("bestshot serve needs fastapi and uvicorn — pip install fastapi uvicorn") from None
    from .a1111 import Limits
    from .app import ServerSettings, create_app

    if max_queue < 1:
        raise BestshotError(f"--max-queue must be >= 1 (got {max_queue})")
    if not 0 < port < 65536:
        raise BestshotError(f"--port must be between 1 and 65535 (got {port})")
    if host not in ("127.0.0.1", "localhost", "::1") and not (token or api_auth):
        typer.echo(f"warning: serving on {host} without --token or --api-auth: anyone who can reach it can use it",
                   err=True)
    settings = ServerSettings(model=model, scorer=scorer, out_dir=out_dir, curate_dir=curate_dir,
                              curate_config=curate_config, max_queue=max_queue,
                              token=token, api_auth=api_auth, device=device, dtype=dtype, memory=memory,
                              max_batch=max_batch, save_candidates=save_candidates,
                              limits=Limits(max_steps=max_steps, max_side=max_side))
    application = create_app(settings)
    typer.echo(f"bestshot serving {model} on http://{host}:{port}/  (API docs: /docs, A1111 API: /sdapi/v1)", err=True)
    uvicorn.run(application, host=host, port=port, log_level="info")
