from proxycore.cli import main

raise SystemExit(main())
