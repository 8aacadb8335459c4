from raylm.cli import app

app()
