from mentallama_server.front_door.server import main

main()
