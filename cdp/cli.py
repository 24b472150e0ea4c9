"""``cdp``: the one entry point for people. Command groups live in ``cdp.commands``.

Heavy libraries (Dagster, Splink, Great Expectations) are imported inside the commands that need them,
so that ``cdp --help`` answers at once.
"""

from __future__ import annotations

import typer

from cdp.commands import identity, pipeline, privacy, profile, segments, web

app = typer.Typer(
    name="cdp",
    help="Open-source customer data platform: ingest, resolve identities, build profiles, enforce consent.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

pipeline.register(app)  # demo, generate, run
app.add_typer(profile.app, name="profile")
app.add_typer(identity.app, name="identity")
app.add_typer(segments.app, name="segments")
app.add_typer(privacy.app, name="privacy")
web.register(app)  # serve, users

if __name__ == "__main__":
    app()
