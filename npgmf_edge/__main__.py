"""`python -m npgmf_edge` runs the command line."""

from npgmf_edge.cli import main

main()
