from dlion.cli import main

raise SystemExit(main())
