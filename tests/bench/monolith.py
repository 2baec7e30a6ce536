"""The single FastAPI app Folio replaces, serving GET /api/users/me its way.

The REST benchmark's baseline, written as the original backend's guide writes it: a sync
SQLAlchemy session per request (``Depends(get_db)``), PyJWT ES256 ``decode_token``, an ORM
select by id. It reads Folio's ``users`` table with Folio's model and answers the same
JSON. Served by ``uvicorn tests.bench.monolith:app --workers N``; never part of Folio.
"""

import os
from collections.abc import Iterator
from typing import Any

import jwt
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from services.user.models import User

engine = create_engine(os.environ["MONOLITH_DATABASE_URL"], pool_size=10, pool_pre_ping=True)
SessionLocal = sessionmaker(bind=engine, autoflush=False)
PUBLIC_KEY = os.environ["MONOLITH_PUBLIC_KEY"]
ISSUER = os.environ["MONOLITH_ISSUER"]
AUDIENCE = os.environ["MONOLITH_AUDIENCE"]

app = FastAPI()
bearer = HTTPBearer()


def get_db() -> Iterator[Session]:
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


def decode_token(token: str) -> str | None:
    try:
        payload = jwt.decode(
            token, PUBLIC_KEY, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER
        )
    except jwt.PyJWTError:
        return None
    subject = payload.get("sub")
    return subject if isinstance(subject, str) else None


@app.get("/api/users/me")
def get_me(
    credentials: HTTPAuthorizationCredentials = Depends(bearer),  # noqa: B008
    db: Session = Depends(get_db),  # noqa: B008
) -> dict[str, Any]:
    user_id = decode_token(credentials.credentials)
    if user_id is None:
        raise HTTPException(status_code=401, detail="invalid token")
    user = db.query(User).filter(User.id == user_id).first()
    if user is None:
        raise HTTPException(status_code=404, detail="user not found")
    return {
        "user": {
            "id": user.id,
            "email": user.email,
            "display_name": user.display_name,
            "picture_url": user.picture_url,
            "is_premium": user.is_premium,
            "is_admin": user.is_admin,
            "created_at": user.created_at.isoformat(),
            "updated_at": user.updated_at.isoformat(),
        }
    }
