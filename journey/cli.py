"""`journey`: one Typer app, each command a few lines over library functions the notebooks call too.

The commands live in `journey.commands`, a module per stage of the flow; each runs inside the error handler
of `journey.errors`, which shows a user's mistake as one line on stderr (exit status 1).
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from journey.commands import data, model, report, serve
from journey.errors import CommandGroup

app = typer.Typer(
    cls=CommandGroup, help="Journey engine: customer journey stages, next best action, recommendations."
)
features_app = typer.Typer(help="Feature jobs: events -> model-ready sequences and labels.")
decisions_app = typer.Typer(help="The service's decision log.")


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log debug messages; show the traceback of an error.")
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # MLflow announces every new store ("Creating initial MLflow database tables..."): noise beside a
    # command's own output, or beside its one-line error.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.DEBUG if verbose else logging.WARNING)


# The commands, in the order of the flow: data in, the model, the service, what happened.
app.command()(data.simulate)
app.command()(data.ingest)
app.add_typer(features_app, name="features")
features_app.command("build")(data.features_build)
app.command()(model.train)
app.command()(model.evaluate)
app.command()(model.promote)
app.command()(serve.serve)
app.command("score-audience")(serve.score_audience)
app.add_typer(decisions_app, name="decisions")
decisions_app.command("export")(serve.decisions_export)
app.command()(report.report)
app.command("map")(report.map_)
app.command()(report.demo)


if __name__ == "__main__":  # pragma: no cover
    app()
