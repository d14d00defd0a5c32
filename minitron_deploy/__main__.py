from minitron_deploy.cli import main

raise SystemExit(main())
