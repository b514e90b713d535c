from pipemon.cli import main

main()
