"""The embedded default stack (no Docker): locating and starting the brokers
(``servers``), the supervisord plan of every service (``stack``) and the demo workload
(``workload``)."""
