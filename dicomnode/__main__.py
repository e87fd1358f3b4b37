from dicomnode.cli.main import main

raise SystemExit(main())
