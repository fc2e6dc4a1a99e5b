package org.hush.sdk;

/** How hard local commits are pushed to storage. */
public enum Durability {
    /** Survives power loss (the default). */
    FULL,
    /** Survives a crash of the app; the last commits may be lost on power loss. Faster. */
    NORMAL
}
