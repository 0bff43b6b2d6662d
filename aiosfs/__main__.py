from aiosfs.cli import main

raise SystemExit(main())
