"""Test double of jupyterhub.orm: the declarative Base and new_session_factory, on SQLAlchemy."""

from sqlalchemy import create_engine
from sqlalchemy.orm import declarative_base, sessionmaker

Base = declarative_base()


def new_session_factory(url, reset=False, expire_on_commit=False, **kwargs):
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    return sessionmaker(bind=engine, expire_on_commit=expire_on_commit)
