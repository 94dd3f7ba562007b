"""HTTP routes: written by the resource owner."""
from fastapi import APIRouter

router = APIRouter()
