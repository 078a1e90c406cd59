from ssbench.cli import main

main()
