from beacon_golem.cli import main

main()
