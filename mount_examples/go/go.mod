module aiosfs.example/client

go 1.19
