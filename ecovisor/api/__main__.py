from ecovisor.api.app import main

main()
