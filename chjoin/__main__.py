from chjoin.cli import main

main()
