"""Test double of nativeauthenticator.orm.UserInfo: the columns bootstrap_admin.py uses."""

from jupyterhub.orm import Base
from sqlalchemy import Boolean, Column, Integer, LargeBinary, String


class UserInfo(Base):
    __tablename__ = "users_info"
    id = Column(Integer, primary_key=True, autoincrement=True)
    username = Column(String(128), nullable=False)
    password = Column(LargeBinary, nullable=False)
    is_authorized = Column(Boolean, default=False)
