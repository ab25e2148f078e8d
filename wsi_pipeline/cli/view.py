"""`wsi-pipeline view`: the report of a prediction folder served locally, slides at full resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["view"]

console = Console(stderr=True)


def view(
    pred_dir: Annotated[
        Path,
        typer.Argument(
            exists=True, file_okay=False, metavar="PRED_DIR", help="A predict output folder (its predictions.csv)."
        ),
    ],
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but 127.0.0.1 lets other machines in.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: any free one).", min=0, max=65535)] = 8000,
) -> None:
    """Serve the report's pages with every slide's tiles read from its slide file on request (full resolution,
    nothing written), on http://127.0.0.1:PORT/ until Ctrl-C.

    Example: wsi-pipeline view run1/pred --port 8000
    """
    from ..report import make_server

    server = make_server(pred_dir, host=host, port=port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] listening on {host}: other machines can see these slides")
    print(f"serving {len(server.results)} slide(s) of {pred_dir} on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
