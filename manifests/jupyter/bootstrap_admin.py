# Runs inside the hub pod (kubectl exec -i deploy/hub -- python3 -c "<this file>"),
# reading {"db_url", "username", "password", "rotate"} as JSON on stdin: creates the
# NativeAuthenticator account of the platform admin, authorized, unless it exists
# (sign-up stays closed until then: whoever signed up first under the admin's name
# would become admin). With "rotate", an existing account gets the new password.
# Prints one word: created | exists | rotated | exists-other-password.
import json
import sys

import bcrypt
from jupyterhub import orm
from nativeauthenticator.orm import UserInfo

spec = json.loads(sys.stdin.read())
session = orm.new_session_factory(spec["db_url"])()
UserInfo.__table__.create(session.get_bind(), checkfirst=True)
user = session.query(UserInfo).filter(UserInfo.username == spec["username"]).first()
if user is None:
    hashed = bcrypt.hashpw(spec["password"].encode(), bcrypt.gensalt())
    session.add(UserInfo(username=spec["username"], password=hashed, is_authorized=True))
    session.commit()
    print("created")
elif bcrypt.checkpw(spec["password"].encode(), user.password):
    print("exists")
elif spec.get("rotate"):
    user.password = bcrypt.hashpw(spec["password"].encode(), bcrypt.gensalt())
    user.is_authorized = True
    session.commit()
    print("rotated")
else:
    print("exists-other-password")
