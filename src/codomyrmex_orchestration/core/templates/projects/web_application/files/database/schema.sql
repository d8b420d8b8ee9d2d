-- Schema of {{project_name}}; applied by backend/app.py connect().
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL
);
INSERT INTO items (name) SELECT 'first item' WHERE NOT EXISTS (SELECT 1 FROM items);
