from bench.run import cli

cli(prog_name="python -m bench")
