"""The ``mgpath`` subcommands that are plain argparse tools: parse, call a pipeline, print (no logic here)."""
