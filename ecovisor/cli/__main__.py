from ecovisor.cli.main import app

app()
