"""The Django test application's models: categories, events with tags."""

from __future__ import annotations

from django.db import models


class Category(models.Model):
    title = models.CharField(max_length=100)


class Tag(models.Model):
    name = models.CharField(max_length=100)


class Event(models.Model):
    title = models.CharField(max_length=100)
    description = models.TextField(default="")
    views = models.IntegerField(default=0)
    is_deleted = models.BooleanField(default=False)
    is_public = models.BooleanField(default=True)
    category = models.ForeignKey(Category, null=True, on_delete=models.SET_NULL)
    tags = models.ManyToManyField(Tag)
