from ecovisor.api.main import main

main()
