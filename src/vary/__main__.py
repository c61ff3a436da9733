from vary.cli import app

app()
