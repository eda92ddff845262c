"""datacloud: provision and run a private data cloud with Apache Airflow."""

__version__ = "0.1.0"
